"""A strfry-style write-policy plugin whose behaviour each event's content chooses."""

import json
import sys
import time


def main() -> None:
    for line in sys.stdin:
        request = json.loads(line)
        event = request["event"]
        content = event["content"]
        answer = {"id": event["id"], "action": "accept"}
        if content == "crash":
            sys.exit(3)
        elif content == "hang":
            time.sleep(3600)
        elif content == "garbage":
            print("this is not json", flush=True)
            continue
        elif content == "wrong id":
            answer["id"] = "0" * 64
        elif content == "unknown action":
            answer["action"] = "maybe"
        elif content == "reject":
            answer = {"id": event["id"], "action": "reject", "msg": "blocked: not on the list"}
        elif content == "shadow":
            answer["action"] = "shadowReject"
        elif content == "echo":
            fields = (request["type"], request["sourceType"], request["sourceInfo"])
            received = request["receivedAt"]
            answer = {
                "id": event["id"],
                "action": "reject",
                "msg": f"blocked: {' '.join(fields)} {type(received).__name__}",
            }
        print(json.dumps(answer), flush=True)


main()
