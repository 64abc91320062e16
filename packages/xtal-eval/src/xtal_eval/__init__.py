"""xtal_eval"""
