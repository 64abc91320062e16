"""xtal_repr"""
