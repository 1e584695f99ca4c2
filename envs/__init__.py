"""Concrete RLRF environments; each module says what it rewards and what feedback it gives."""
