// Command publisher publishes events on NATS as a bahamut server does:
// each an elemental Event (entity a bin of the model's MessagePack), in a
// bahamut Publication, both encoded with elemental's MessagePack handle.
// With -hierarchy, each goes to <topic>.<identity>.<type> (bahamut's
// subject hierarchies) instead of <topic>.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"time"

	nats "github.com/nats-io/nats.go"

	"interop/wire"
)

// input is one event to publish, read from -events.
type input struct {
	Identity     string            `json:"identity"`
	Type         string            `json:"type"`
	Task         wire.Task         `json:"entity"`
	TrackingName string            `json:"trackingName"`
	TrackingData map[string]string `json:"trackingData"`
}

func main() {
	server := flag.String("nats", nats.DefaultURL, "the NATS server")
	topic := flag.String("topic", "events", "the push topic")
	hierarchy := flag.Bool("hierarchy", false, "publish to <topic>.<identity>.<type>")
	eventsJSON := flag.String("events", "[]", "the events, as a JSON array of {identity, type, entity (a task)}")
	flag.Parse()

	var inputs []input
	check(json.Unmarshal([]byte(*eventsJSON), &inputs))
	nc, err := nats.Connect(*server)
	check(err)
	defer nc.Close()

	for _, in := range inputs {
		entity, err := wire.Encode(wire.MSGPACK, &in.Task)
		check(err)
		event := wire.Event{
			RawData:   entity,
			Identity:  in.Identity,
			Type:      in.Type,
			Timestamp: time.Now(),
			Encoding:  wire.MSGPACK,
		}
		eventBytes, err := wire.Encode(wire.MSGPACK, &event)
		check(err)
		subject := *topic
		if *hierarchy {
			subject = fmt.Sprintf("%s.%s.%s", *topic, in.Identity, in.Type)
		}
		publication := wire.Publication{
			Topic:        subject,
			Data:         eventBytes,
			Encoding:     wire.MSGPACK,
			TrackingName: in.TrackingName,
			TrackingData: in.TrackingData,
		}
		data, err := wire.Encode(wire.MSGPACK, &publication)
		check(err)
		check(nc.Publish(subject, data))
	}
	// Publish only buffers: flush so that every event is on the server before we exit.
	check(nc.Flush())
	wire.PrintLine(map[string]interface{}{"kind": "published", "count": len(inputs)})
}

func check(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "publisher:", err)
		os.Exit(1)
	}
}
