package bridge

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"testing"

	"github.com/wsbridge/wsbridge/subjects"
)

// sendWS is the websocket object of a send as SPEC §1 has it: "data" always.
type sendWS struct {
	Action          string `json:"action"`
	SecConnectionID string `json:"secConnectionID"`
	DataType        string `json:"dataType"`
	Data            string `json:"data"`
}

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
				if !tc.close {
					// As an item of a fan-out: a head of its own and
					// the message's shared tail make the same body.
					d := &delivery{body: []byte(body), binary: tc.binary}
					d.shareTail()
					head, err := b.payload(&item{token: token, d: d})
					if err != nil {
						t.Fatal(err)
					}
					if whole := append(head, d.tail...); !bytes.Equal(whole, got) {
						t.Errorf("id %q body %q: fan-out body %s, send body %s", id, body, whole, got)
					}
					if bytes.Contains(head, []byte(body)) && len(body) > 8 {
						t.Errorf("fan-out head %q holds the data", head)
					}
				}
				var want []byte
				if tc.close {
					ws := subjects.GatewayWebSocket{Action: subjects.ActionClosing, SecConnectionID: id}
					want, _ = json.Marshal(subjects.PushBody{WebSocket: ws})
				} else {
					// SPEC §1: a send always carries "data", even empty;
					// subjects.GatewayWebSocket would omit it.
					ws := sendWS{Action: subjects.ActionDataSend, SecConnectionID: id, DataType: subjects.DataText, Data: body}
					if tc.binary {
						ws.DataType, ws.Data = subjects.DataBinary, base64.StdEncoding.EncodeToString([]byte(body))
					}
					want, _ = json.Marshal(struct {
						WebSocket sendWS `json:"websocket"`
					}{ws})
					if body == "" && !bytes.Contains(got, []byte(`"data":""`)) {
						t.Errorf("empty send without \"data\":\"\": %s", got)
					}
				}
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
