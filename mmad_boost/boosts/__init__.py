"""The boosts: knowledge (RAG) and expert evidence composed around a base model, routing, tuning."""
