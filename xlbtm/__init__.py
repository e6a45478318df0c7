"""xlbtm: cross-lingual expert language models (c-BTM / X-ELM) on torch-native parts.

Importing the package is cheap on purpose: heavy libraries (torch, sklearn, transformers) are
imported by the submodules that need them.
"""

__version__ = "0.1.0"
