from relay.net.server import RelayServer
from tests.conftest import url_of
from tests.nostr import Client, Keys


async def test_publish_then_query(relay: RelayServer, client: Client, keys: Keys) -> None:
    event = keys.sign(content="first")
    assert await client.publish(event) == ["OK", event["id"], True, ""]
    assert await client.req("s", {"authors": [keys.pubkey]}) == [event]
    other = await Client.connect(url_of(relay))
    await other.send(["REQ", "live", {"kinds": [1]}])
    assert (await other.recv())[0] == "EVENT"
    assert await other.recv() == ["EOSE", "live"]
    second = keys.sign(content="second")
    await client.publish(second)
    assert await other.recv() == ["EVENT", "live", second]
    await other.close()
