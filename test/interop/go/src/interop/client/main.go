// Command client connects to a push server as manipulate's Go push client
// does (gorilla/websocket; every message written as a TEXT frame, as wsc
// writes them, whatever the encoding; elemental's codec settings), sends a
// push config, and prints what it receives as JSON lines on stdout:
//
//	{"kind":"open"}                         dialled, config written
//	{"kind":"event","frame":"binary",...}   an event, its entity decoded into a Go struct
//	{"kind":"renewed"}                      the config with parameters.token written (-renew-token)
//	{"kind":"error","error":{...}}          an error event, decoded into elemental's Error
//	{"kind":"closed","code":1003}           the server closed the socket
//
// It exits after -events events, after the first error event with
// -until-error, or when the socket closes.
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"time"

	"github.com/gorilla/websocket"

	"interop/wire"
)

func main() {
	endpoint := flag.String("url", "", "the push endpoint, ws://host/path/events")
	token := flag.String("token", "", "sent as the token query parameter, as manipulate does")
	namespace := flag.String("namespace", "/acme", "sent as the namespace query parameter")
	encodingFlag := flag.String("encoding", "json", "json or msgpack: Content-Type and Accept")
	configJSON := flag.String("config", "", "the push config, as JSON (identities, filters, parameters)")
	renewToken := flag.String("renew-token", "", "after the first event, send the config again with parameters.token set, as manipulate renews a token")
	events := flag.Int("events", 1, "exit after this many events")
	untilError := flag.Bool("until-error", false, "exit at the first error event")
	timeout := flag.Duration("timeout", 10*time.Second, "give up after this long")
	flag.Parse()

	media, err := wire.MediaType(*encodingFlag)
	check(err)
	u, err := url.Parse(*endpoint)
	check(err)
	q := u.Query()
	q.Set("token", *token)
	q.Set("namespace", *namespace)
	// manipulate's option to understand error events.
	q.Set("enableErrors", "true")
	u.RawQuery = q.Encode()

	// The encoding is chosen by headers, as manipulate chooses it: no extension of ours.
	header := http.Header{}
	header.Set("Content-Type", media)
	header.Set("Accept", media)
	conn, resp, err := websocket.DefaultDialer.Dial(u.String(), header)
	if err != nil {
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		wire.PrintLine(map[string]interface{}{"kind": "refused", "status": status, "text": err.Error()})
		os.Exit(0)
	}
	defer conn.Close()
	check(conn.SetReadDeadline(time.Now().Add(*timeout)))

	var config wire.PushConfig
	if *configJSON != "" {
		check(json.Unmarshal([]byte(*configJSON), &config))
	}
	sendConfig(conn, media, &config)
	wire.PrintLine(map[string]string{"kind": "open"})

	received := 0
	for {
		frameType, data, err := conn.ReadMessage()
		if err != nil {
			var closeErr *websocket.CloseError
			if errors.As(err, &closeErr) {
				wire.PrintLine(map[string]interface{}{"kind": "closed", "code": closeErr.Code})
				return
			}
			wire.PrintLine(map[string]interface{}{"kind": "closed", "code": 0, "text": err.Error()})
			return
		}
		// manipulate decodes by the session's encoding, never by the frame's opcode.
		var event wire.Event
		check(wire.Decode(media, data, &event))
		if event.Type == "error" {
			var e wire.Error
			check(wire.Decode(event.Encoding, event.Entity(), &e))
			wire.PrintLine(map[string]interface{}{"kind": "error", "frame": frameName(frameType), "error": e})
			if *untilError {
				return
			}
			continue
		}
		wire.PrintLine(map[string]interface{}{
			"kind":      "event",
			"frame":     frameName(frameType),
			"identity":  event.Identity,
			"type":      event.Type,
			"encoding":  event.Encoding,
			"timestamp": event.Timestamp.Format(time.RFC3339Nano),
			"entity":    decodeEntity(&event),
		})
		received++
		if received == 1 && *renewToken != "" {
			if config.Params == nil {
				config.Params = map[string][]string{}
			}
			config.Params["token"] = []string{*renewToken}
			sendConfig(conn, media, &config)
			wire.PrintLine(map[string]string{"kind": "renewed"})
		}
		if received >= *events {
			return
		}
	}
}

// sendConfig writes the config in a TEXT frame even in MessagePack, as wsc does.
func sendConfig(conn *websocket.Conn, media string, config *wire.PushConfig) {
	data, err := wire.Encode(media, config)
	check(err)
	check(conn.WriteMessage(websocket.TextMessage, data))
}

// decodeEntity decodes a task into the Task struct, as an application
// decodes into its model; any other identity into a map.
func decodeEntity(event *wire.Event) interface{} {
	if event.Identity == "task" {
		var task wire.Task
		check(wire.Decode(event.Encoding, event.Entity(), &task))
		return task
	}
	var m map[string]interface{}
	check(wire.Decode(event.Encoding, event.Entity(), &m))
	return m
}

func frameName(t int) string {
	if t == websocket.BinaryMessage {
		return "binary"
	}
	return "text"
}

func check(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "client:", err)
		os.Exit(1)
	}
}
