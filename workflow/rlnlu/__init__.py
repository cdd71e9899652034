"""Reproduce "Improving the Language Understanding Capabilities of Large Language Models
Using Reinforcement Learning" (arXiv 2410.11020): zero-shot, few-shot, LoRA SFT and LoRA PPO
of decoder-only LLMs on GLUE and SuperGLUE."""
