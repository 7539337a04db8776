package bridge

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"testing"

	"github.com/wsbridge/wsbridge/subjects"
)

// The hand-written push body must be byte for byte what encoding/json gives.
func TestPayloadMatchesEncodingJSON(t *testing.T) {
	b := &Bridge{}
	bodies := []string{"", "hello", `quote " and \ backslash`, "<b>&amp;</b>", "tab\tnew\nline\r\x00\x1f\x7f",
		"héllo wörld ✓", "line\u2028sep\u2029", "bad \xff\xfe utf8", string(make([]byte, 300))}
	ids := []string{"conn-1==", "plain", "with \"quote\"", "é<>"}
	for _, id := range ids {
		token := subjects.Token(id)
		for _, body := range bodies {
			for _, tc := range []struct {
				close, binary bool
			}{{false, false}, {false, true}, {true, false}} {
				it := &item{token: token, close: tc.close, d: &delivery{body: []byte(body), binary: tc.binary}}
				got, err := b.payload(it)
				if err != nil {
					t.Fatal(err)
				}
				ws := subjects.GatewayWebSocket{Action: subjects.ActionClosing, SecConnectionID: id}
				if !tc.close {
					ws.Action, ws.DataType, ws.Data = subjects.ActionDataSend, subjects.DataText, body
					if tc.binary {
						ws.DataType, ws.Data = subjects.DataBinary, base64.StdEncoding.EncodeToString([]byte(body))
					}
				}
				want, _ := json.Marshal(subjects.PushBody{WebSocket: ws})
				if !bytes.Equal(got, want) {
					t.Errorf("id %q body %q close %v binary %v:\n got %s\nwant %s", id, body, tc.close, tc.binary, got, want)
				}
			}
		}
	}
}

func TestReadAnswer(t *testing.T) {
	for _, n := range []int{0, 25, 511, 512, 513, 5000, maxAnswer + 10} {
		in := bytes.Repeat([]byte("a"), n)
		got, err := readAnswer(bytes.NewReader(in), make([]byte, 512))
		want := in[:min(n, maxAnswer)]
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("n %d: got %d bytes, err %v; want %d", n, len(got), err, len(want))
		}
	}
}
