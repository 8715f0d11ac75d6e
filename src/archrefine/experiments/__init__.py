"""The paper's four experiments, the claims check, and `reproduce`."""
