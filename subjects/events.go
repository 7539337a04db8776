package subjects

import (
	"encoding/json"
	"time"
)

// ConnectEvent is the body of P.in.connect.T and the value of a registry
// record in the WS_CONNS bucket.
type ConnectEvent struct {
	ConnectionID   string          `json:"connectionId"`
	Token          string          `json:"token"`
	ConnectedAt    time.Time       `json:"connectedAt"`
	SourceIP       string          `json:"sourceIp"`
	ServiceID      string          `json:"serviceId"`
	Stage          string          `json:"stage"`
	Protocols      []string        `json:"protocols"`
	Extensions     []string        `json:"extensions"`
	UserID         string          `json:"userId"`
	Groups         []string        `json:"groups"`
	State          json.RawMessage `json:"state,omitempty"`
	RequestContext json.RawMessage `json:"requestContext,omitempty"`
	// Closing is set on the registry record (never in the P.in.connect
	// event; conn.get and conn.list show it) by the bridge just before it
	// pushes a close asked for on P.out.close.T: the disconnect reason the
	// gateway's cleanup that follows must report ("closed"). See
	// Names.Forget.
	Closing string `json:"closing,omitempty"`
	// Instance is set on the registry record (never in the connect event)
	// of a resumable session that moved to another wsbridge gateway
	// instance than the one its id names: the instance holding it now.
	// Bridges push there, and survivors sweep it when that instance is
	// gone. See RecordInstance.
	Instance string `json:"instance,omitempty"`
}

// RecordInstance is the registry record's field naming the edge instance
// that holds a session taken from the instance its connection id names.
const RecordInstance = "instance"

// Disconnect reasons.
const (
	ReasonClient  = "client"  // the client closed or the gateway's cleanup function ran
	ReasonGone    = "gone"    // the gateway answered a push with 404/410
	ReasonClosed  = "closed"  // a business service closed it through P.out.close.T
	ReasonExpired = "expired" // the registry record's TTL ran out
)

// DisconnectEvent is the body of P.in.disconnect.T.
type DisconnectEvent struct {
	ConnectionID string    `json:"connectionId"`
	Token        string    `json:"token"`
	At           time.Time `json:"at"`
	Reason       string    `json:"reason"`
}

// AuthReply is a business service's answer on P.auth.connect. Allow accepts;
// UserID, Groups, Protocol and State are optional and end up in the connect
// event and registry record. A rejection may carry ErrNo and ErrMsg, which the
// registration function returns to the gateway.
type AuthReply struct {
	Allow    bool            `json:"allow"`
	UserID   string          `json:"userId,omitempty"`
	Groups   []string        `json:"groups,omitempty"`
	Protocol string          `json:"protocol,omitempty"`
	State    json.RawMessage `json:"state,omitempty"`
	ErrNo    int             `json:"errNo,omitempty"`
	ErrMsg   string          `json:"errMsg,omitempty"`
}

// APIError is the reply of the request-reply API on failure.
type APIError struct {
	Error string `json:"error"`
}

// ConnGetRequest is the body of P.api.conn.get.
type ConnGetRequest struct {
	Token string `json:"token"`
}

// ConnListRequest is the body of P.api.conn.list; empty filters match all.
type ConnListRequest struct {
	Group string `json:"group,omitempty"`
	User  string `json:"user,omitempty"`
	Limit int    `json:"limit,omitempty"`
}

// ConnListReply is the answer of P.api.conn.list. Total counts every
// match; Truncated says Connections left some out, because of the request's
// limit (at most 1000) or to fit in one NATS message.
type ConnListReply struct {
	Connections []ConnectEvent `json:"connections"`
	Total       int            `json:"total"`
	Truncated   bool           `json:"truncated,omitempty"`
}

// GroupRequest is the body of P.api.group.add and P.api.group.remove.
type GroupRequest struct {
	Token  string   `json:"token"`
	Groups []string `json:"groups"`
}
