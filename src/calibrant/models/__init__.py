"""Model factories (UNet 2D/3D, DynUNet, CIFAR ResNet, MLP, text model), registered by name."""
