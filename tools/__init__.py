"""genzip.tools"""
