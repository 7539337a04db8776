package subjects

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
)

// The registry API's errors, matched with errors.Is.
var (
	// ErrNotFound is the bridge's answer for a token the registry does not
	// hold: never connected, or already gone.
	ErrNotFound = errors.New("connection not found")
	// ErrNoBridge reports that no bridge serves the request-reply API.
	ErrNoBridge = errors.New("no bridge answered")
)

// APIRequestTimeout bounds one registry API request when ctx has no deadline.
const APIRequestTimeout = 5 * time.Second

// RemoteError is an error the bridge answered ({"error":"…"}). It matches
// ErrNotFound when that is what the bridge said.
type RemoteError struct {
	Subject string // the API subject asked
	Message string // the bridge's error text
}

// Error names the subject and the bridge's answer.
func (e *RemoteError) Error() string {
	return fmt.Sprintf("%s: bridge: %s", e.Subject, e.Message)
}

// Is reports the sentinel the bridge's answer stands for: ErrNotFound, or
// ErrTooManyGroups for a group.add past MaxGroups.
func (e *RemoteError) Is(target error) bool {
	switch target {
	case ErrNotFound:
		return e.Message == ErrNotFound.Error()
	case ErrTooManyGroups:
		return strings.HasPrefix(e.Message, ErrTooManyGroups.Error())
	}
	return false
}

// ConnGet returns the registry record of one connection (P.api.conn.get).
// An unknown token is ErrNotFound.
func (c *Client) ConnGet(ctx context.Context, token string) (ConnectEvent, error) {
	var rec ConnectEvent
	if _, err := ConnID(token); err != nil {
		return rec, err
	}
	err := c.request(ctx, c.names.ConnGet(), ConnGetRequest{Token: token}, &rec)
	return rec, err
}

// ConnList lists registered connections matching req (P.api.conn.list).
// Total counts every match; Truncated says the answer left some out (the
// limit, or the size of one NATS message).
func (c *Client) ConnList(ctx context.Context, req ConnListRequest) (ConnListReply, error) {
	var reply ConnListReply
	err := c.request(ctx, c.names.ConnList(), req, &reply)
	return reply, err
}

// GroupAdd puts a connection in groups and returns its updated record
// (P.api.group.add). Past MaxGroups the error is ErrTooManyGroups; an
// unknown token is ErrNotFound.
func (c *Client) GroupAdd(ctx context.Context, token string, groups ...string) (ConnectEvent, error) {
	return c.groups(ctx, c.names.GroupAdd(), token, groups)
}

// GroupRemove takes a connection out of groups and returns its updated
// record (P.api.group.remove).
func (c *Client) GroupRemove(ctx context.Context, token string, groups ...string) (ConnectEvent, error) {
	return c.groups(ctx, c.names.GroupRemove(), token, groups)
}

func (c *Client) groups(ctx context.Context, subject, token string, groups []string) (ConnectEvent, error) {
	var rec ConnectEvent
	if _, err := ConnID(token); err != nil {
		return rec, err
	}
	if _, err := Groups(groups); err != nil {
		return rec, err
	}
	err := c.request(ctx, subject, GroupRequest{Token: token, Groups: groups}, &rec)
	return rec, err
}

// request sends one API request and decodes the answer into out: an error
// answer is a *RemoteError, no responder is ErrNoBridge.
func (c *Client) request(ctx context.Context, subject string, req, out any) error {
	body, err := json.Marshal(req)
	if err != nil {
		return fmt.Errorf("%s: encode request: %w", subject, err)
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, APIRequestTimeout)
		defer cancel()
	}
	m, err := c.nc.RequestWithContext(ctx, subject, body)
	if errors.Is(err, nats.ErrNoResponders) {
		return fmt.Errorf("%s: %w", subject, ErrNoBridge)
	}
	if err != nil {
		return fmt.Errorf("%s: %w", subject, err)
	}
	return decodeReply(subject, m.Data, out)
}

// decodeReply decodes an API answer: {"error":"…"} becomes a *RemoteError.
func decodeReply(subject string, data []byte, out any) error {
	var apiErr APIError
	if json.Unmarshal(data, &apiErr) == nil && apiErr.Error != "" {
		return &RemoteError{Subject: subject, Message: apiErr.Error}
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("%s: decode reply: %w", subject, err)
	}
	return nil
}
