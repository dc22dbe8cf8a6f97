"""Datasets at scale: what a sample id means (layouts), content digests that are computed once
(hashcache), Merkle commitments over records (merkle, scan) and membership proofs (proofs).

The modules are named by what they do; none of them imports a higher layer than formats/bundle.
"""
