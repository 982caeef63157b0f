"""mixkd: how does mixup-style augmentation interact with knowledge distillation?"""

__version__ = "0.1.0"
