"""Vision-language fine-tuning: a processor, conversations with images, their batches."""
