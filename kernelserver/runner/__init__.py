"""What runs inside a namespace's process: it imports only the shared modules."""
