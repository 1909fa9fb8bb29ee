"""From-scratch encoders, Mixture-of-Experts feed-forward layers and MoE upcycling of pretrained encoders."""
