"""crystalflow"""
