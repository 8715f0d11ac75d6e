"""Reading model-written code: extraction, static checks, fingerprints, tokens, MinHash novelty.

May import core and space; it never runs the code (that is the sandbox layer's job).
"""
