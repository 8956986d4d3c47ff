"""Tagging: the InsTag prompt, answer parsing, model resolution, backends and the resumable runner."""
