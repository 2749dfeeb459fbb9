"""Node programs: the stateless edge and the stateful worker shard."""
