"""Cold-start SFT: chat-template data, assistant-only loss, packing, LoRA, and the tiny model kit."""
