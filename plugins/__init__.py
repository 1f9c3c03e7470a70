"""genzip.plugins"""
