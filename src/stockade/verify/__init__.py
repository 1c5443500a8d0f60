"""`stockade verify`: prove from inside each running server's sandbox that every policy is enforced."""

from stockade.verify.runner import Verifier, run_verify, verify_leftovers

__all__ = ["Verifier", "run_verify", "verify_leftovers"]
