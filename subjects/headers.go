package subjects

// Header names carried on wsbridge messages (SPEC §3).
const (
	// HeaderConnID carries the raw secConnectionID.
	HeaderConnID = "Ws-Connection-Id"
	// HeaderDataType is "text" or "binary".
	HeaderDataType = "Ws-Data-Type"
	// HeaderMsgID is JetStream's de-duplication id; the functions set it to
	// the SCF request id.
	HeaderMsgID = "Nats-Msg-Id"
	// HeaderExclude lists tokens a broadcast, group or user send skips
	// (comma separated).
	HeaderExclude = "Ws-Exclude"
	// HeaderError is the reason a dead letter could not be delivered.
	HeaderError = "Ws-Error"
	// HeaderAttempts is how many push attempts a dead letter had.
	HeaderAttempts = "Ws-Attempts"
	// HeaderStatus is the last HTTP status of a dead letter's push (0 when
	// none was received).
	HeaderStatus = "Ws-Status"
	// HeaderSubject is the original subject of a dead letter.
	HeaderSubject = "Ws-Subject"
	// HeaderReason is the dead-letter reason class (permanent, gone,
	// retries, invalid), a bounded enum also used as a metric label.
	HeaderReason = "Ws-Reason"
	// HeaderTruncated marks a dead letter that had to be cut to fit in the
	// server's max_payload: the original body size in bytes, or "headers"
	// (then ",<size>" when the body was cut too) when the original headers
	// were dropped and only the Ws-* metadata kept.
	HeaderTruncated = "Ws-Truncated"
	// HeaderSeq carries, on a reverse push to wsbridge gateway, the stream
	// sequence of the outbound command it delivers (decimal). The edge
	// writes each sequence to a connection at most once and never one at
	// or below the last it accepted for that connection, so a push
	// repeated by a restarted or cut-off bridge is answered as delivered
	// and dropped.
	HeaderSeq = "Ws-Seq"
)

// Data types of HeaderDataType and of the gateway's dataType field.
const (
	DataText   = "text"
	DataBinary = "binary"
)
