"""Register, read and delete demonstrations and their named sets."""
