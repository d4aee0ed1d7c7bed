"""SpikeSink: records the tensor arriving on its InPort at every time step."""
