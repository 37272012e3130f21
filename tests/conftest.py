import os
import sys

# Tests import the scripts (train_pretrain.py, ...) as modules, so the repo root goes on sys.path.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
