package bridge

import (
	"errors"
	"fmt"
	"unicode/utf8"

	"github.com/nats-io/nats.go"

	"github.com/wsbridge/wsbridge/subjects"
)

// parseOutbound decides whether an outbound message can be pushed: its
// subject is a P.out command whose token or name is within the contract's
// limits, its data type is known, text is valid UTF-8 and Ws-Exclude is
// within its limit. On error the message is dead-lettered as invalid: under
// P.dlq.invalid when subj.Dir is not Out (the subject itself is bad, and
// nothing may be built from it), else under its kind and token. Pure, so
// that the fuzz target drives exactly what the bridge runs.
func parseOutbound(names subjects.Names, subject string, h nats.Header, body []byte) (subj subjects.Subject, binary bool, err error) {
	subj, err = names.Parse(subject)
	if err != nil || subj.Dir != subjects.Out {
		if err == nil {
			err = fmt.Errorf("%w: not an outbound subject", subjects.ErrBadSubject)
		}
		return subjects.Subject{}, false, err
	}
	if subj.Kind != subjects.KindClose {
		switch dt := h.Get(subjects.HeaderDataType); dt {
		case "", subjects.DataText:
			if !utf8.Valid(body) {
				return subj, false, errors.New("text payload is not valid UTF-8 (send it with Ws-Data-Type: binary)")
			}
		case subjects.DataBinary:
			binary = true
		default:
			return subj, false, fmt.Errorf("unknown %s %q (want text or binary)", subjects.HeaderDataType, clipString(dt, 32))
		}
	}
	if ex := h.Get(subjects.HeaderExclude); len(ex) > subjects.MaxExcludeLen {
		return subj, false, fmt.Errorf("%s of %d bytes, limit %d", subjects.HeaderExclude, len(ex), subjects.MaxExcludeLen)
	}
	return subj, binary, nil
}
