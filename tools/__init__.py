"""Tools of the repository (not shipped in the wheel): the generator of docs/checks."""
