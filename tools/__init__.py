"""Developer tools of the pack (test-checkpoint writer, golden recipes)."""
