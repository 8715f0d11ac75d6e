"""archrefine: simulate and run LLM-driven architecture refinement loops."""
