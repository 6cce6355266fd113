"""Periodic and one-off jobs on the stored data: forgetting, retention."""
