"""Chemistry: elements, bonds from distances (EDM rules), stability, RDKit molecules."""
