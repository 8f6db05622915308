"""The offline demo. :mod:`hubclf.demo.data` generates its deterministic procedural datasets: a many-class base
set standing in for ImageNet, and an 8-class, 448x224 target set standing in for the user's own images.

Nothing is imported here, so that ``python -m hubclf.demo.data`` runs the module exactly once.
"""
