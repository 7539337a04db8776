package bridge

import (
	"encoding/base64"
	"encoding/json"

	"github.com/wsbridge/wsbridge/subjects"
)

// payload builds the reverse-push body of SPEC §1. It appends the JSON
// by hand into one right-sized buffer: encoding/json's reflection cost a
// tenth of the push path's CPU. Strings that need escaping (rare: ids are
// base64url and most text is plain) go through encoding/json, so the body is
// byte for byte what json.Marshal gives for the same fields, except that a
// send always carries "data" (subjects.GatewayWebSocket omits it when empty).
//
// The body is the returned head followed by it.d.tail. A fan-out's tail
// (everything after the connection id: data type and data) is built once
// per message by shareTail, so its items hold only their head rather than
// a copy of the data each; otherwise the tail is nil and head is the body.
func (b *Bridge) payload(it *item) ([]byte, error) {
	id, err := subjects.ConnID(it.token)
	if err != nil {
		return nil, err
	}
	if it.close {
		buf := make([]byte, 0, len(`{"websocket":{"action":"closing","secConnectionID":""}}`)+len(id))
		buf = append(buf, `{"websocket":{"action":"`+subjects.ActionClosing+`","secConnectionID":`...)
		buf = appendJSONString(buf, id)
		return append(buf, "}}"...), nil
	}
	n := len(sendHead) + len(id) + 2
	if it.d.tail == nil {
		n += sendTailLen(it.d)
	}
	buf := make([]byte, 0, n)
	buf = append(buf, sendHead...)
	buf = appendJSONString(buf, id)
	if it.d.tail == nil {
		buf = appendSendTail(buf, it.d)
	}
	return buf, nil
}

// sendHead starts a send's body; the connection id follows.
const sendHead = `{"websocket":{"action":"` + subjects.ActionDataSend + `","secConnectionID":`

// shareTail builds the body tail the items of a fan-out share.
func (d *delivery) shareTail() {
	d.tail = appendSendTail(make([]byte, 0, sendTailLen(d)), d)
}

func sendTailLen(d *delivery) int {
	dataLen := len(d.body)
	if d.binary {
		dataLen = base64.StdEncoding.EncodedLen(len(d.body))
	}
	return len(`,"dataType":"binary","data":""}}`) + dataLen
}

// appendSendTail appends what follows the connection id in a send's body.
func appendSendTail(buf []byte, d *delivery) []byte {
	dataType := subjects.DataText
	if d.binary {
		dataType = subjects.DataBinary
	}
	buf = append(buf, `,"dataType":"`...)
	buf = append(buf, dataType...)
	buf = append(buf, '"')
	// Always "data", "" for an empty send (SPEC §1 body), although the
	// struct's tag is omitempty.
	buf = append(buf, `,"data":`...)
	if d.binary {
		// Base64 never needs escaping.
		buf = append(buf, '"')
		buf = base64.StdEncoding.AppendEncode(buf, d.body)
		buf = append(buf, '"')
	} else {
		buf = appendJSONString(buf, string(d.body))
	}
	return append(buf, "}}"...)
}

// appendJSONString appends s as a JSON string exactly as encoding/json
// writes it: verbatim when it holds only printable ASCII that needs no
// escape, through json.Marshal otherwise (quotes, backslashes, control
// characters, HTML-sensitive <>&, and all non-ASCII, which Marshal checks
// for invalid UTF-8 and U+2028/U+2029).
func appendJSONString(buf []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x80 || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			q, _ := json.Marshal(s) // a string always encodes
			return append(buf, q...)
		}
	}
	buf = append(buf, '"')
	buf = append(buf, s...)
	return append(buf, '"')
}
