"""docteur's image builder: fetch a Git repository and write a disk image."""
