"""efficientvit-lab."""
