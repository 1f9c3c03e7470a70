"""genzip.backends"""
