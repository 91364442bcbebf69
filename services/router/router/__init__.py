"""openlines router: the single writer of session state."""
