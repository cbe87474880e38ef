"""The retrieval-augmented QA example: retrieve → chain_of_thought → confidence check."""
