"""`make bench`: load workloads against loopback servers plus in-process micro workloads.

Every number is reported next to baselines measured in the same run, because the 2-core machine is
shared and absolute numbers drift from one run to the next.
"""
