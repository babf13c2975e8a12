"""cifar: a thin library for training small CIFAR-10 CNNs.

Data, nets and their analysis, optimizers and LR schedules. It never imports
accelerate or wandb and never prints: ``train.py`` orchestrates.
"""
