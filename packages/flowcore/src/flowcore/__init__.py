"""flowcore"""
