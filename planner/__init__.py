"""Planning: hardware document, catalog, memory model and decisions.

Pure functions over data. The only module here that touches the machine is
`probe` (NVML, psutil and a few files under /proc and /sys); nothing here starts
a process or opens a network connection.
"""
