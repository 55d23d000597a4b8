"""Fakes of cloud APIs we cannot reach from the test machine, spoken to only through the official SDKs."""
