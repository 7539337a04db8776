package subjects

// HeaderRedriven marks a command that `wsbridge dlq redrive` published again
// from the dead letters: the WS_DLQ stream sequence of the dead letter it
// came from. The bridge does nothing with it; a redriven command that fails
// again keeps it in its new dead letter, so a second failure is seen as one.
const HeaderRedriven = "Ws-Redriven"

// RedriveBucket is the KV bucket that records which dead letters were
// redriven, keyed by their WS_DLQ sequence (WS_DLQ_REDRIVEN), so none is
// redriven twice. `wsbridge dlq redrive` creates it, with WS_DLQ's max age
// as TTL: a record lives as long as its dead letter.
func (n Names) RedriveBucket() string { return n.StreamDLQ() + "_REDRIVEN" }
