"""genzip.frontend"""
