"""Real components for the tests: each module starts one on demand, waits until it is ready, yields its
endpoint and stops it. A component that cannot start fails the test that needs it; nothing is skipped."""
